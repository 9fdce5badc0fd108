"""Tracking a face through a video: `mfface track`.

Frames in (`video`), MediaPipe landmarks per frame (`detect`), the identity fitted once from
chosen frames (`select`, `identity`), per-frame head pose and expression from landmarks with
temporal smoothness (`tracker`, `temporal`), an optional photometric refinement through the
renderer (`refine`), and the outputs: animation.json/.csv (`animation`), animation.glb
(`gltf_animation`) and tracked.mp4 (`render`); `pipeline` runs the passes, `config` holds every
setting. Tracking calls the forward model, the objectives and the fit's stage-1 optimisation; it
re-implements none of them.
"""
