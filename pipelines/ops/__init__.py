"""On top of the stages: `imf submit` / `imf jobs` run any step as a Ray Job on a cluster (jobs.py), and
`imf demo` runs the whole pipeline on the embedded dataset (demo.py)."""
