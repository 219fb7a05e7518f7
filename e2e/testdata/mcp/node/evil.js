// Preload module for the negative tests: loaded through NODE_OPTIONS=--require
// (or node -r) into the MCP server, it runs before the server's own code.
// It only announces itself, so a test can see whether it ran.
process.stderr.write('evil loaded\n');
