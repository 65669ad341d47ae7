// OpenQASM 3: prepare |1> on qubit 0 and teleport it to qubit 2 with
// mid-circuit measurements and classically controlled corrections.
// The last bit (r[2], leftmost in the counts) is always 1.
OPENQASM 3.0;
include "stdgates.inc";
qubit[3] q;
bit[3] r;
x q[0];
h q[1];
cx q[1], q[2];
cx q[0], q[1];
h q[0];
r[0] = measure q[0];
r[1] = measure q[1];
if (r[1]) x q[2];
if (r[0]) z q[2];
r[2] = measure q[2];
