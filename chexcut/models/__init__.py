"""Models: the registry (families as data), libraries, surgery, anatomy, model files, weights."""
