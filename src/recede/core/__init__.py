"""The receding-horizon core: blocks, the MPC engine, recomputation, LoCo groups."""
