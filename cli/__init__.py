"""`insight`: submit batches, follow them, export results and cancel jobs from a terminal."""
