import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createConnection, createServer } from 'node:net';

/**
 * A Redis of the test's own (Debian's `redis-server` on a free loopback port, nothing saved), so that a test
 * may stop it; `null` without redis-server outside CI. In CI (CI set) a missing redis-server is an error, so
 * that the queue tests cannot be skipped silently (.ci/run installs it). `restart` starts it again on the same port
 * (empty: nothing was saved), after killing it if it still runs.
 */
export async function ownRedis(): Promise<{ port: number; url: string; kill: () => Promise<void>; restart: () => Promise<void> } | null> {
  if (spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status !== 0) {
    if (process.env.CI) throw new Error('CI: redis-server is not installed (.ci/run installs it)');
    return null;
  }
  const port = await freePort();
  const start = async (): Promise<{ server: ChildProcess; exited: Promise<void> }> => {
    const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    const exited = new Promise<void>((resolve) => server.once('exit', () => resolve()));
    for (let i = 0; !(await canConnect(port)); i++) {
      if (i > 100 || server.exitCode !== null || server.signalCode !== null) {
        server.kill('SIGKILL');
        throw new Error(`redis-server did not start on port ${port}${server.exitCode !== null ? ` (it exited with ${server.exitCode})` : ''}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    return { server, exited };
  };
  let running = await start();
  const kill = async (): Promise<void> => {
    const { server, exited } = running;
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGKILL');
    await exited;
  };
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    kill,
    restart: async () => {
      await kill();
      running = await start();
    },
  };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ host: '127.0.0.1', port }, () => {
      s.end();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}
