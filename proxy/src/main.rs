// A proxy allocates and frees a few small buffers per request; mimalloc's thread-local
// free lists make that measurably cheaper than glibc's malloc (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mixr_proxy::cli::main()
}
