// A proxy allocates and frees many small buffers per request (headers, frames); mimalloc's
// thread-local free lists cost measurably less CPU per request than glibc's malloc here.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
