"""Plumbing every service shares: durable file writes, TLS material, logging, settings
files (YAML + environment). It imports nothing from edge/, cloud/, model/ or fchm/, so
each of them may import it; the CLI package fchm/ sits on top of all of them."""
