import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createConnection } from 'node:net';

/**
 * A Redis for the tests that need one: the one `.ci/run` starts (VMEXIT_TEST_REDIS=redis://HOST:PORT), else
 * one started here from Debian's `redis-server` on a free loopback port, else none. `null` only outside CI:
 * in CI (CI set) a missing Redis is an error, so those tests cannot be skipped silently.
 */
export async function testRedis(): Promise<{ url: string; stop: () => Promise<void> } | null> {
  const given = process.env.VMEXIT_TEST_REDIS;
  if (given !== undefined && given !== '') return { url: given, stop: async () => {} };
  const have = spawnSync('redis-server', ['--version'], { stdio: 'ignore' }).status === 0;
  if (!have) {
    if (process.env.CI) throw new Error('CI: redis-server is not installed and VMEXIT_TEST_REDIS is not set (.ci/run installs and starts it)');
    return null;
  }
  const port = 20000 + (process.pid % 20000);
  const server: ChildProcess = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  for (let i = 0; ; i++) {
    if (await canConnect(port)) break;
    if (i > 100) throw new Error(`redis-server did not start on port ${port}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    stop: () =>
      new Promise<void>((resolve) => {
        server.once('exit', () => resolve());
        server.kill('SIGTERM');
      }),
  };
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
