"""The cloud: gRPC ingest, detector tail, stores, REST API, view queue and restore worker."""
