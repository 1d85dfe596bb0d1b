//! The local bus (owned by the local-bus work; placeholder).
