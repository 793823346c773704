"""Reading results: sweep reports and benchmarks."""
