"""Evaluation: generate sample videos per checkpoint, score them with documented metrics, compare checkpoints.

Stages (each a plain function over DIR_OR_URI arguments, also run as jobs and from the CLI):
    generate.generate_samples  prompts x checkpoints x seeds -> videos/<ckpt>/<prompt>/<seed>-<hash>.mp4 (+ .json)
    scoring.score_videos       videos -> records/<video>.json, features/, contact/, fvd.json, scores.jsonl
    compare.compare_scores     scores -> comparison report (Markdown + HTML with charts and contact sheets)
"""
