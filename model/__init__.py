"""FaceInsight and its parts in plain torch: no Ray, DVC or MLflow here."""
