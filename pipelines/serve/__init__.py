"""Stage 6, serving: `imf serve` answers HTTP requests for images with a Ray Serve application.

    schema.py     the request (class, count or seeds/indices, guidance, format), a pydantic model: clear 400s
    responses.py  the answer: a PNG (one image or a grid), an .npz of uint8 images, or JSON with base64 PNGs
    api.py        the HTTP API (FastAPI): POST / for images, GET / (the model, or the playground page), /openapi.json
    page/         the playground page: HTML, a little JavaScript and CSS, nothing fetched from elsewhere
    versions.py   what a replica serves: a registered version (following its alias) or a model folder
    spec.py       AppSpec: model, batching, replicas and their resources (plain data, no Ray import)
    gather.py     the ingress's calls: requests that arrive while calls are out go together in the next one
    app.py        the deployments: an HTTP ingress and a batched, replicated generator (serve.batch)
    server.py     `imf serve` (ServeSpec): start the application on a local or given Ray cluster

Image k of a request is image (seed, index) of imf_core.Generator.images, the same function `imf sample`
and the pyfunc use, so the same version, seed, index, class and guidance give the same bytes everywhere.
"""
