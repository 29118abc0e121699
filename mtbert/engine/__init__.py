"""The training engine: run folders, data, the multitask trainer, evaluation and checkpoints.

A regular package (not a namespace folder) so that ``find_packages`` puts it in the wheel.
"""
