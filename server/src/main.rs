fn main() -> std::process::ExitCode {
    mixr_server::cli::main()
}
