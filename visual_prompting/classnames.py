"""Human-readable class names and CLIP zero-shot prompt templates.

Every class-name list is in the label order of the corresponding torchvision dataset
(index ``i`` is the name of label ``i``).  Templates use ``{}`` as the placeholder and are
``str.format``-compatible.

Sources:
  * openai/CLIP ``data/prompts.md``: CIFAR10, CIFAR100, DTD and Food101 names; MNIST names;
    per-dataset templates.
  * LAION-AI/CLIP_benchmark ``clip_benchmark/datasets/en_classnames.json`` (CLIP's names
    re-ordered to torchvision label order): EuroSAT, Flowers102, GTSRB, Oxford-IIIT Pet.
  * torchvision ``FashionMNIST.classes`` (lower-cased except "T-shirt/top").
"""

from __future__ import annotations

CIFAR10: list[str] = [
    'airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck',
]

CIFAR100: list[str] = [
    'apple', 'aquarium fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle', 'bicycle',
    'bottle', 'bowl', 'boy', 'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle',
    'caterpillar', 'cattle', 'chair', 'chimpanzee', 'clock', 'cloud', 'cockroach', 'couch',
    'crab', 'crocodile', 'cup', 'dinosaur', 'dolphin', 'elephant', 'flatfish', 'forest', 'fox',
    'girl', 'hamster', 'house', 'kangaroo', 'keyboard', 'lamp', 'lawn mower', 'leopard', 'lion',
    'lizard', 'lobster', 'man', 'maple tree', 'motorcycle', 'mountain', 'mouse', 'mushroom',
    'oak tree', 'orange', 'orchid', 'otter', 'palm tree', 'pear', 'pickup truck', 'pine tree',
    'plain', 'plate', 'poppy', 'porcupine', 'possum', 'rabbit', 'raccoon', 'ray', 'road',
    'rocket', 'rose', 'sea', 'seal', 'shark', 'shrew', 'skunk', 'skyscraper', 'snail', 'snake',
    'spider', 'squirrel', 'streetcar', 'sunflower', 'sweet pepper', 'table', 'tank', 'telephone',
    'television', 'tiger', 'tractor', 'train', 'trout', 'tulip', 'turtle', 'wardrobe', 'whale',
    'willow tree', 'wolf', 'woman', 'worm',
]

# torchvision SVHN maps the digit "0" to label 0 (the raw ".mat" label 10 is remapped).
SVHN: list[str] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
]

# torchvision EuroSAT (ImageFolder) order: AnnualCrop, Forest, HerbaceousVegetation, Highway,
# Industrial, Pasture, PermanentCrop, Residential, River, SeaLake.
EUROSAT: list[str] = [
    'annual crop land', 'forest', 'brushland or shrubland', 'highway or road',
    'industrial buildings or commercial buildings', 'pasture land', 'permanent crop land',
    'residential buildings or homes or apartments', 'river', 'lake or sea',
]

# Oxford 102 category order (0 = "pink primrose"). CLIP wording; torchvision's own
# Flowers102.classes says "ball moss" for label 92 (CLIP: "air plant").
FLOWERS102: list[str] = [
    'pink primrose', 'hard-leaved pocket orchid', 'canterbury bells', 'sweet pea',
    'english marigold', 'tiger lily', 'moon orchid', 'bird of paradise', 'monkshood',
    'globe thistle', 'snapdragon', "colt's foot", 'king protea', 'spear thistle', 'yellow iris',
    'globe flower', 'purple coneflower', 'peruvian lily', 'balloon flower',
    'giant white arum lily', 'fire lily', 'pincushion flower', 'fritillary', 'red ginger',
    'grape hyacinth', 'corn poppy', 'prince of wales feathers', 'stemless gentian', 'artichoke',
    'sweet william', 'carnation', 'garden phlox', 'love in the mist', 'mexican aster',
    'alpine sea holly', 'ruby-lipped cattleya', 'cape flower', 'great masterwort', 'siam tulip',
    'lenten rose', 'barbeton daisy', 'daffodil', 'sword lily', 'poinsettia', 'bolero deep blue',
    'wallflower', 'marigold', 'buttercup', 'oxeye daisy', 'common dandelion', 'petunia',
    'wild pansy', 'primula', 'sunflower', 'pelargonium', 'bishop of llandaff', 'gaura',
    'geranium', 'orange dahlia', 'pink and yellow dahlia', 'cautleya spicata', 'japanese anemone',
    'black-eyed susan', 'silverbush', 'californian poppy', 'osteospermum', 'spring crocus',
    'bearded iris', 'windflower', 'tree poppy', 'gazania', 'azalea', 'water lily', 'rose',
    'thorn apple', 'morning glory', 'passion flower', 'lotus', 'toad lily', 'anthurium',
    'frangipani', 'clematis', 'hibiscus', 'columbine', 'desert-rose', 'tree mallow', 'magnolia',
    'cyclamen', 'watercress', 'canna lily', 'hippeastrum', 'bee balm', 'air plant', 'foxglove',
    'bougainvillea', 'camellia', 'mallow', 'mexican petunia', 'bromelia', 'blanket flower',
    'trumpet creeper', 'blackberry lily',
]

# torchvision DTD: sorted texture folder names.
DTD: list[str] = [
    'banded', 'blotchy', 'braided', 'bubbly', 'bumpy', 'chequered', 'cobwebbed', 'cracked',
    'crosshatched', 'crystalline', 'dotted', 'fibrous', 'flecked', 'freckled', 'frilly', 'gauzy',
    'grid', 'grooved', 'honeycombed', 'interlaced', 'knitted', 'lacelike', 'lined', 'marbled',
    'matted', 'meshed', 'paisley', 'perforated', 'pitted', 'pleated', 'polka-dotted', 'porous',
    'potholed', 'scaly', 'smeared', 'spiralled', 'sprinkled', 'stained', 'stratified', 'striped',
    'studded', 'swirly', 'veined', 'waffled', 'woven', 'wrinkled', 'zigzagged',
]

# torchvision OxfordIIITPet: breeds ordered by class id (alphabetical, case-insensitive).
OXFORD_PETS: list[str] = [
    'Abyssinian', 'American Bulldog', 'American Pit Bull Terrier', 'Basset Hound', 'Beagle',
    'Bengal', 'Birman', 'Bombay', 'Boxer', 'British Shorthair', 'Chihuahua', 'Egyptian Mau',
    'English Cocker Spaniel', 'English Setter', 'German Shorthaired', 'Great Pyrenees',
    'Havanese', 'Japanese Chin', 'Keeshond', 'Leonberger', 'Maine Coon', 'Miniature Pinscher',
    'Newfoundland', 'Persian', 'Pomeranian', 'Pug', 'Ragdoll', 'Russian Blue', 'Saint Bernard',
    'Samoyed', 'Scottish Terrier', 'Shiba Inu', 'Siamese', 'Sphynx', 'Staffordshire Bull Terrier',
    'Wheaten Terrier', 'Yorkshire Terrier',
]

# torchvision Food101: sorted class keys, underscores replaced by spaces.
FOOD101: list[str] = [
    'apple pie', 'baby back ribs', 'baklava', 'beef carpaccio', 'beef tartare', 'beet salad',
    'beignets', 'bibimbap', 'bread pudding', 'breakfast burrito', 'bruschetta', 'caesar salad',
    'cannoli', 'caprese salad', 'carrot cake', 'ceviche', 'cheese plate', 'cheesecake',
    'chicken curry', 'chicken quesadilla', 'chicken wings', 'chocolate cake', 'chocolate mousse',
    'churros', 'clam chowder', 'club sandwich', 'crab cakes', 'creme brulee', 'croque madame',
    'cup cakes', 'deviled eggs', 'donuts', 'dumplings', 'edamame', 'eggs benedict', 'escargots',
    'falafel', 'filet mignon', 'fish and chips', 'foie gras', 'french fries', 'french onion soup',
    'french toast', 'fried calamari', 'fried rice', 'frozen yogurt', 'garlic bread', 'gnocchi',
    'greek salad', 'grilled cheese sandwich', 'grilled salmon', 'guacamole', 'gyoza', 'hamburger',
    'hot and sour soup', 'hot dog', 'huevos rancheros', 'hummus', 'ice cream', 'lasagna',
    'lobster bisque', 'lobster roll sandwich', 'macaroni and cheese', 'macarons', 'miso soup',
    'mussels', 'nachos', 'omelette', 'onion rings', 'oysters', 'pad thai', 'paella', 'pancakes',
    'panna cotta', 'peking duck', 'pho', 'pizza', 'pork chop', 'poutine', 'prime rib',
    'pulled pork sandwich', 'ramen', 'ravioli', 'red velvet cake', 'risotto', 'samosa', 'sashimi',
    'scallops', 'seaweed salad', 'shrimp and grits', 'spaghetti bolognese', 'spaghetti carbonara',
    'spring rolls', 'steak', 'strawberry shortcake', 'sushi', 'tacos', 'takoyaki', 'tiramisu',
    'tuna tartare', 'waffles',
]

# GTSRB class ids 0..42 (torchvision GTSRB label = class id); CLIP wording.
GTSRB: list[str] = [
    'red and white circle 20 kph speed limit', 'red and white circle 30 kph speed limit',
    'red and white circle 50 kph speed limit', 'red and white circle 60 kph speed limit',
    'red and white circle 70 kph speed limit', 'red and white circle 80 kph speed limit',
    'end / de-restriction of 80 kph speed limit', 'red and white circle 100 kph speed limit',
    'red and white circle 120 kph speed limit',
    'red and white circle red car and black car no passing',
    'red and white circle red truck and black car no passing',
    'red and white triangle road intersection warning', 'white and yellow diamond priority road',
    'red and white upside down triangle yield right-of-way', 'stop', 'empty red and white circle',
    'red and white circle no truck entry', 'red circle with white horizonal stripe no entry',
    'red and white triangle with exclamation mark warning',
    'red and white triangle with black left curve approaching warning',
    'red and white triangle with black right curve approaching warning',
    'red and white triangle with black double curve approaching warning',
    'red and white triangle rough / bumpy road warning',
    'red and white triangle car skidding / slipping warning',
    'red and white triangle with merging / narrow lanes warning',
    'red and white triangle with person digging / construction / road work warning',
    'red and white triangle with traffic light approaching warning',
    'red and white triangle with person walking warning',
    'red and white triangle with child and person walking warning',
    'red and white triangle with bicyle warning',
    'red and white triangle with snowflake / ice warning',
    'red and white triangle with deer warning',
    'white circle with gray strike bar no speed limit',
    'blue circle with white right turn arrow mandatory',
    'blue circle with white left turn arrow mandatory',
    'blue circle with white forward arrow mandatory',
    'blue circle with white forward or right turn arrow mandatory',
    'blue circle with white forward or left turn arrow mandatory',
    'blue circle with white keep right arrow mandatory',
    'blue circle with white keep left arrow mandatory',
    'blue circle with white arrows indicating a traffic circle',
    'white circle with gray strike bar indicating no passing for cars has ended',
    'white circle with gray strike bar indicating no passing for trucks has ended',
]

MNIST: list[str] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
]

FASHION_MNIST: list[str] = [
    'T-shirt/top', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag',
    'ankle boot',
]

CLASSNAMES: dict[str, list[str]] = {
    'cifar10': CIFAR10,
    'cifar100': CIFAR100,
    'svhn': SVHN,
    'eurosat': EUROSAT,
    'flowers102': FLOWERS102,
    'dtd': DTD,
    'oxford_pets': OXFORD_PETS,
    'food101': FOOD101,
    'gtsrb': GTSRB,
    'mnist': MNIST,
    'fashion_mnist': FASHION_MNIST,
}

# Template used by the visual prompting paper (Bahng et al., 2022).
PAPER_TEMPLATE = "This is a photo of a {}"

_CIFAR_TEMPLATES: list[str] = [
    'a photo of a {}.', 'a blurry photo of a {}.', 'a black and white photo of a {}.',
    'a low contrast photo of a {}.', 'a high contrast photo of a {}.', 'a bad photo of a {}.',
    'a good photo of a {}.', 'a photo of a small {}.', 'a photo of a big {}.',
    'a photo of the {}.', 'a blurry photo of the {}.', 'a black and white photo of the {}.',
    'a low contrast photo of the {}.', 'a high contrast photo of the {}.',
    'a bad photo of the {}.', 'a good photo of the {}.', 'a photo of the small {}.',
    'a photo of the big {}.',
]

_DIGIT_TEMPLATES: list[str] = [
    'a photo of the number: "{}".',
]

# CLIP's per-dataset zero-shot template ensembles (openai/CLIP data/prompts.md). prompts.md has no
# SVHN entry, so SVHN reuses the MNIST digit template. Fashion-MNIST has no CLIP templates.
CLIP_TEMPLATES: dict[str, list[str]] = {
    'cifar10': list(_CIFAR_TEMPLATES),
    'cifar100': list(_CIFAR_TEMPLATES),
    'svhn': list(_DIGIT_TEMPLATES),
    'eurosat': [
        'a centered satellite photo of {}.',
        'a centered satellite photo of a {}.',
        'a centered satellite photo of the {}.',
    ],
    'flowers102': ['a photo of a {}, a type of flower.'],
    'dtd': [
        'a photo of a {} texture.',
        'a photo of a {} pattern.',
        'a photo of a {} thing.',
        'a photo of a {} object.',
        'a photo of the {} texture.',
        'a photo of the {} pattern.',
        'a photo of the {} thing.',
        'a photo of the {} object.',
    ],
    'oxford_pets': ['a photo of a {}, a type of pet.'],
    'food101': ['a photo of {}, a type of food.'],
    'gtsrb': [
        'a zoomed in photo of a "{}" traffic sign.',
        'a centered photo of a "{}" traffic sign.',
        'a close up photo of a "{}" traffic sign.',
    ],
    'mnist': list(_DIGIT_TEMPLATES),
}
