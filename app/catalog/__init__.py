"""The model catalog: which engines are installed (plugins), which models each has (models, hub,
whisper_base), what their options resolve to (hotwords, postprocess). Filesystem checks and entry-point
reads only: nothing here loads a model or reaches a network, except `asrq models pull` (hub.pull).
The API checks submissions against it; the workers load what it names (workers/engines/)."""
