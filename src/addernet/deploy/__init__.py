"""Deployment, above the models: int8 quantisation of trained adder networks and the files that carry them."""
