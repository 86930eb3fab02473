"""Gate analysis: PromQL templates (templates), statistics (stats), pure gate evaluation (gates) and
the Prometheus adapter (prometheus, the only module here that does I/O). Import the submodules
directly so the pure ones stay free of HTTP dependencies."""
