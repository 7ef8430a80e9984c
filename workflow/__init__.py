"""Workflows that run the stages one after another: ``sweep`` (train, prune, export,
evaluate and bench a matrix of variants, then the trade-off report) and ``demo`` (the whole
toolkit on generated line data). The only stage allowed to import every other one; nothing
imports it but the CLI.
"""
