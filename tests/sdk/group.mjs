// Sends one group call through the official Segment SDK to the host given on the command line.
// Usage: node group.mjs <host> <writeKey> <groupId>
import { Analytics } from '@segment/analytics-node'

const [host, writeKey, groupId] = process.argv.slice(2)
const analytics = new Analytics({ writeKey, host, flushAt: 1, maxRetries: 2 })
analytics.on('error', (err) => {
  console.error('sdk error', err)
  process.exitCode = 1
})
analytics.group({ userId: 'sdk-user', groupId, traits: { name: 'SDK Co', created_at: 1714557600 } })
await analytics.closeAndFlush({ timeout: 10000 })
