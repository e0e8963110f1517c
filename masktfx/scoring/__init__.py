"""`masktfx score`: the job (job.py), the regions it reads and the rows it writes (rows.py),
and the pushed version it runs (model.py)."""
