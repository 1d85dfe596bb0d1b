//! Link the partition at its load address with `sp.ld`.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rustc-link-arg=-T{dir}/sp.ld");
    println!("cargo:rerun-if-changed=sp.ld");
}
