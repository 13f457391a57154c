"""One trial, one sweep, distributed strategies. The only package that knows Ray."""
