"""Learning from face datasets: the dataset file format, `mfface prepare`, the dataset reader.

- `dataset_format`: the HDF5 layout (format "mfface-faces"), its writer and shard merge;
- `prepare`: photos -> dataset (landmarks, crops, skin masks), resumable and shardable;
- `dataset_run`: what `prepare` and `synth` share (worker pool, the writing loop, the run summary);
- `dataset`: `FaceDataset`, a torch Dataset over such files, with `Augmentation`;
Nothing is imported here, so `import mfface.learning` stays cheap.
"""
