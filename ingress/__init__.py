"""The HTTP producer deployment: validates images, publishes them to RabbitMQ and answers
each client when its result comes back to this replica."""
