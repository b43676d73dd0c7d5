//! Criterion benches for Sluice's fast path live in `benches/`; shared set-up is here.
