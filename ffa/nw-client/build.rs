//! Link the client at TF-A's BL33 address with `client.ld`.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rustc-link-arg=-T{dir}/client.ld");
    println!("cargo:rerun-if-changed=client.ld");
}
