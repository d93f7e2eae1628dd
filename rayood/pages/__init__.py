"""Self-contained HTML pages: the drift audit's, a filter's review and a screening run's report share these parts."""
