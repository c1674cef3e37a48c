"""Streamlit dashboard over the engine: a thin layer of pages, cached loaders and plots."""
