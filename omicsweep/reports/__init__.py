"""Tracking (MLflow), leaderboard, plots, HTML. The only package that knows MLflow's schema."""
