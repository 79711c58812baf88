"""Reports over the store, read-only and without torch: queries (SQL filters, limits, grouping), aggregate
(protocol groups, mean ± std), tables (rich, markdown, csv, json, LaTeX), compare, listing (runs, metrics
export), show / diff, sparkline, plots (matplotlib), html (the offline page), doctor (the one that imports torch,
inside its checks). Each CLI command is one call into one of them."""
