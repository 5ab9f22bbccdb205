"""Methods that papers bring: each module registers its losses, models or benchmarks."""
