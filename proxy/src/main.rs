fn main() -> std::process::ExitCode {
    mixr_proxy::cli::main()
}
