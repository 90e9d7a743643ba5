"""The similar-product recommender: embeddings (embedding), the catalog and its exact search
(catalog), one query (search), its evaluation (evaluation) and the server's index (index)."""
