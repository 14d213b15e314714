"""The consumer actor pool: pulls image tasks from RabbitMQ, batches them, classifies each
batch with one call, and hands every result back before acking its message."""
