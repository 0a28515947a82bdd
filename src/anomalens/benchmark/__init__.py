"""Reproduce the papers' tables: each method in its paper setting on every category, resumable, next to the
published numbers (`paper_numbers/paper_numbers.csv`, package data).

    from anomalens.benchmark import run_benchmark
    run_benchmark("mvtec", "/data/mvtec", ["patchcore", "winclip"], "runs/mvtec", shots=[0, 1])
"""
from .paper import lookup, paper_numbers, published_mean
from .presets import PRESETS, MethodPreset, get_preset, register_preset
from .runner import load_results, plan_jobs, read_result, run_benchmark
from .summary import summary_table, write_summary

__all__ = ["run_benchmark", "plan_jobs", "load_results", "read_result", "summary_table", "write_summary",
           "PRESETS", "MethodPreset", "get_preset", "register_preset", "lookup", "paper_numbers", "published_mean"]
