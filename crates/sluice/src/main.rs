use std::process::ExitCode;

// mimalloc instead of glibc's malloc: a proxied HTTP request makes about 20 small allocations,
// and glibc's malloc and free were 12 % of its instructions (callgrind, bench/profile-http.sh).
// It costs idle tunnels about 5 KiB each more (BENCHMARKS.md): the `mimalloc` feature.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    sluice::cli::main()
}
