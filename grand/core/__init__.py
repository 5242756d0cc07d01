"""Pure logic: records, geometry, RLE, voting, depth. No Ray, no model weights."""
