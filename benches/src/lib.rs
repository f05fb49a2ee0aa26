//! `sprig-benches` holds no library code: its criterion benches are under `benches/`
//! (`cargo bench -p sprig-benches`), its side-by-side peer scripts next to them (see README.md).
