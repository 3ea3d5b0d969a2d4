"""One pipeline from archive to verdict: stage declarations (stages.py), their runner (runner.py), the CLI."""
