//! Criterion benchmarks for idlevit; the benchmarks live in `benches/`, this library is empty.
