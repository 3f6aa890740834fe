from tests.edge.conftest import edge_settings, labels  # noqa: F401 - shared fixtures
