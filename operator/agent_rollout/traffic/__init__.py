"""Traffic routers: read the weights a route carries, and build the smallest write that changes them."""
