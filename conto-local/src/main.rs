//! A local control plane that speaks Conto's API, backed by the conto-rs embedded engine.

fn main() {
    eprintln!("conto-local: not built yet; see the open issue for the local control plane");
    std::process::exit(2);
}
