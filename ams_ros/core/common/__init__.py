"""What every layer of the core uses: config knobs, torch devices and threads, metrics, where files are."""
