"""Recovery: turns an image backup into a disk image and hands it to a compute provider
(EC2 VM Import, or a local image to download); its workers resume each other's tasks."""
