"""The REST API (Quart on quart-trio, served by hypercorn's trio worker) over a `NodeApi`."""
