"""Media work: segmenters (HLS/MP4 writers), transcoders and demuxers; no HTTP, no sessions."""
