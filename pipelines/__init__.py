"""The imf pipeline: encode, train, tune, register, sample and evaluate on Ray and MLflow."""
